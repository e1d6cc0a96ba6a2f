"""The ``edgecache`` command: ``serve``, ``cache ...``, ``--version``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from edgecache import __version__
from edgecache.cli import cache as cli_cache
from edgecache.errors import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecache")
def main() -> None:
    """edgecache: a compute-local cache in front of OpenStack Glance."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("oslo_args", nargs=-1, type=click.UNPROCESSED)
def serve(oslo_args: Sequence[str]) -> None:
    """Run the daemon (oslo.config options: --config-file FILE, --config-dir DIR)."""
    from oslo_config import cfg

    from edgecache.daemon import app, config, logs

    conf = cfg.ConfigOpts()  # kept: SIGHUP re-reads its files
    try:
        settings = config.load(oslo_args, conf)
    except ConfigError as exc:
        click.echo(f"edgecache: configuration error: {exc}", err=True)
        sys.exit(2)
    try:
        logs.setup(debug=settings.debug, log_file=settings.log_file)
    except OSError as exc:
        click.echo(f"edgecache: cannot open log_file: {exc}", err=True)
        sys.exit(2)
    app.run(settings, conf)


main.add_command(cli_cache.cache)  # edgecache cache list|queue|delete|clear|pin|unpin|verify


if __name__ == "__main__":
    main()
