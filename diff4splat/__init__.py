"""diff4splat: feed-forward 4D Gaussian scenes from one image, a camera trajectory and a prompt."""

__version__ = "0.1.0"
