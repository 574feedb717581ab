"""Maps the top-level component folders into one `lorafleet` import package.

The root package is protos/lorafleet (it holds the generated stubs); each component
folder becomes lorafleet.<component>, so nothing installs a generic top-level name
such as `kernels` or `clients`.
"""

from setuptools import find_packages, setup

COMPONENTS = ("clients", "controlplane", "dataplane", "kernels")


def _packages() -> tuple[list[str], dict[str, str]]:
    package_dir = {"lorafleet": "protos/lorafleet"}
    packages = ["lorafleet"] + [f"lorafleet.{p}" for p in find_packages("protos/lorafleet")]
    for component in COMPONENTS:
        package_dir[f"lorafleet.{component}"] = component
        packages.append(f"lorafleet.{component}")
        packages += [f"lorafleet.{component}.{p}" for p in find_packages(component)]
    return packages, package_dir


packages, package_dir = _packages()
setup(packages=packages, package_dir=package_dir)
