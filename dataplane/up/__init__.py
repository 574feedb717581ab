"""`lorafleet up`: a whole fleet (etcd, control plane, workers, gateway) on one machine,
each part a child process that `up` starts, watches and stops. See README.md."""
