"""Maps the top-level component folders into one `lorafleet` import package.

protos/lorafleet (the generated stubs) and each component folder become lorafleet.<component>.
`lorafleet` and the component folders themselves carry no __init__.py (PEP 420 namespace
packages): a folder with one, such as kernels/, is importable under its bare name by any
Python started in the checkout, and would shadow a PyPI package of that name (Hugging
Face's `kernels`, which transformers imports) for everything else too.
tests/test_import_paths.py keeps it so.
"""

from setuptools import find_namespace_packages, find_packages, setup

COMPONENTS = ("clients", "controlplane", "dataplane", "kernels", "runtime")


def _packages() -> tuple[list[str], dict[str, str]]:
    package_dir = {"lorafleet": "protos/lorafleet"}
    packages = ["lorafleet"] + [f"lorafleet.{p}" for p in find_packages("protos/lorafleet")]
    for component in COMPONENTS:
        package_dir[f"lorafleet.{component}"] = component
        packages.append(f"lorafleet.{component}")
        packages += [f"lorafleet.{component}.{p}" for p in find_packages(component)]
    return packages, package_dir


def _data_packages() -> dict[str, list[str]]:
    """Folders of data files (no modules) that installs carry: the demo adapters.

    Listed as packages so setuptools copies them without warning about them.
    """
    folders = find_namespace_packages("dataplane", include=["demo_adapters*"])
    return {f"lorafleet.dataplane.{f}": ["*.md", "*.json", "*.safetensors"] for f in folders}


packages, package_dir = _packages()
package_data = _data_packages()
# The CPU backend's native kernels are compiled from their source where they run.
setup(packages=packages + list(package_data), package_dir=package_dir,
      package_data={**package_data, "lorafleet.kernels.cpu": ["*.c"]})
