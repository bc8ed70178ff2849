"""The ``sdexec`` command line (:mod:`sdexec.cli.main`), one module per subcommand."""
