"""The command line every dreaming script shares (dream.py, dream_video.py, make_assets.py), by concern:

- ``args``: the flags, defined once: the dream options (model, objective, dream), the start image,
  feature visualisation; and dream.py's parser (``still_parser``);
- ``settings``: flags -> ``DreamSettings`` / ``RenderSettings`` (flag > preset > recipe > default),
  checked before anything slow;
- ``model_choice``: which model and weights the flags name (and which models ``--model all`` has);
- ``start_image``: the image a dream starts from (``--input``, or noise);
- ``info``: ``--info`` and ``--list-layers``.

Use::

    parser = DreamArgumentParser(description="...")
    add_dream_arguments(parser)             # model, layers, octaves, steps, ..., --info, --list-layers
    parser.add_argument("--input", ...)     # the script's own I/O flags

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        if handle_info_flags(args):         # --info / --list-layers print and stop
            return 0
        validate_args(args)
        model, settings = model_and_settings(args)
        dreamer = Dreamer(model, settings, quiet=args.quiet)
        ...

    run_main(main)                          # deepdream.errors: one-line `error: ...`, exit 1; Ctrl-C exits 130
"""
