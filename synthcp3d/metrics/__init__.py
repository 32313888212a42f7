"""synthcp3d.metrics"""
