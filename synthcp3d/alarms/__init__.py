"""synthcp3d.alarms"""
