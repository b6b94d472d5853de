"""Headless rendering with bpy (Blender as a Python module): datasets and turntables.

The only package of the backend that imports bpy, and only inside functions, so importing it is cheap.
``poses`` and ``annotations`` are plain numpy and run without bpy.
"""
