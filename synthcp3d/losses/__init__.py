"""synthcp3d.losses"""
