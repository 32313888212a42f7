"""Imported by the bundles' configs (``"$import synthcp3d.bundle_excepthook"``) so that ``python -m monai.bundle
run`` on bad data ends with the project's error naming the file (:func:`synthcp3d.errors.install_excepthook`)."""

from synthcp3d.errors import install_excepthook

install_excepthook()
