"""The DeepDream engine shared by dream.py, dream_video.py and train_dream.py."""
