"""emokp-ray: facial keypoints and facial emotion, trained from scratch, distributed with Ray.

Importing the package has no side effects: no Ray start, no environment writes.
"""

__version__ = "0.1.0"
