"""synthcp3d.data"""
