"""synthcp3d.reports"""
