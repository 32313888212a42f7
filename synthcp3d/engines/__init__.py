"""synthcp3d.engines"""
