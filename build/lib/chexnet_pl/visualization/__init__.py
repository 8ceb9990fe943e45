"""Heat maps (CAM, Grad-CAM family), overlays on the X-ray, prediction tables."""
