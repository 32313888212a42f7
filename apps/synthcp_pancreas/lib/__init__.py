"""Infer tasks of the synthcp_pancreas MONAI Label app (the sample apps' ``lib/`` layout)."""
