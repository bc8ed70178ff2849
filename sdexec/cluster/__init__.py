"""Site operations across many ranks: one command, many servers, one report.

- :mod:`sdexec.cluster.hosts`: the hosts file, how rank N is reached (rank -> URI);
- :mod:`sdexec.cluster.fanout`: one asyncio client per rank, all at once;
- :mod:`sdexec.cluster.outcome`: what happened on one rank, and the summary;
- :mod:`sdexec.cluster.perilog`: a prolog/epilog run on every rank;
- :mod:`sdexec.cluster.perilog_report`: the sans-IO report of such a run.

Nothing is imported here.
"""
