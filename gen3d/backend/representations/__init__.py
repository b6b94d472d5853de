"""Scene representations: textured meshes and 3D Gaussians (triplane NeRF and DMTet live with their methods)."""
