"""Llama-family decoder models loaded from Hugging Face checkpoint directories."""
