"""Trained models put to use: loading a checkpoint or exported file into something that runs on images."""
