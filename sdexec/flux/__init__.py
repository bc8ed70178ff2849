"""The Flux front door: sdexec as the ``sdexec`` broker module of a Flux instance."""
