"""synthcp3d.networks"""
