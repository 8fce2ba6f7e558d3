"""Map the rooms (top-level folders) onto the one import namespace ``stemd``.

pyproject.toml holds the metadata; this file only says which folder is which package, so that
``stemd/`` is ``stemd``, ``models/`` is ``stemd.models``, ``daemon/`` is ``stemd.daemon`` and so on.
"""

from setuptools import find_packages, setup

ROOMS = {
    "stemd": "stemd",
    "stemd.models": "models",
    "stemd.daemon": "daemon",
    "stemd.bridge": "bridge",
    "stemd.plugin_host": "plugin_host",
}

packages, package_dir = [], {}
for package, folder in ROOMS.items():
    package_dir[package] = folder
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir,
      package_data={"stemd.plugin_host": ["*/*", "*/*/*"]}, include_package_data=True)
