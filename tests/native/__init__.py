"""Builders of tiny native-layout dataset samples (real file formats) from a scene whose ground truth is known."""
