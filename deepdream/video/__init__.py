"""Dreamed videos, one module per concern:

- ``modes``: what a video mode declares (its flags, checks, input and frames) and the run they share;
- ``zoom``: the zoom feedback video (``ZoomMode``), from a start image or noise;
- ``clip``: every frame of an existing clip (``ClipMode``), with its sound and timing;
- ``flow``: the optical flow that carries a clip's dream from frame to frame;
- ``store``: the frames folder, the run's record, resume, and the frame loop;
- ``encoding``: H.264 MP4/MKV and GIF, written atomically with exact timestamps.
"""
