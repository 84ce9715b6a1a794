"""``leveret schemas``: export the JSON Schema files, check compatibility."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from leveret.cli.base import app_option, load_app, main, one_line_errors

# --- schemas ------------------------------------------------------------------


@main.group("schemas")
def schemas_group() -> None:
    """Export the JSON Schema files and check versions for compatibility."""


@schemas_group.command("export")
@click.option(
    "--dir", "directory", default="schemas", show_default=True, type=click.Path(file_okay=False)
)
@click.option("--check", is_flag=True, help="Write nothing; fail if a file differs from its model.")
@app_option
@one_line_errors
def schemas_export(directory: str, check: bool, app_target: str) -> None:
    """Write one draft-07 JSON Schema file per message type and version."""
    from leveret import schemas

    models = load_app(app_target).models()
    if check:
        drift = schemas.drift(models, Path(directory))
        if drift:
            click.echo(
                "schema files out of date: " + ", ".join(drift) + "; run `leveret schemas export`",
                err=True,
            )
            sys.exit(1)
        click.echo(f"{len(models)} schema file(s) up to date")
        return
    for path in schemas.export(models, Path(directory)):
        click.echo(f"wrote {path}")


@schemas_group.command("check")
@click.option(
    "--dir", "directory", default="schemas", show_default=True, type=click.Path(file_okay=False)
)
@one_line_errors
def schemas_check(directory: str) -> None:
    """Tell whether each version of a type is backward compatible with the previous one."""
    from leveret import compatibility

    findings = compatibility.check(Path(directory))
    breaking = False
    for f in findings:
        if f.problems:
            breaking = True
            click.echo(f"{f.type} v{f.old_version} -> v{f.new_version}: BREAKING")
            for problem in f.problems:
                click.echo(f"  - {problem}")
        else:
            click.echo(f"{f.type} v{f.old_version} -> v{f.new_version}: compatible")
    if not findings:
        click.echo("no type has more than one version")
    sys.exit(1 if breaking else 0)


@main.command()
@click.option(
    "--output", default="asyncapi.json", show_default=True, type=click.Path(dir_okay=False)
)
@click.option("--title", default="leveret pipeline", show_default=True)
@click.option(
    "--api-version", default="1.0.0", show_default=True, help="Version of the described API."
)
@app_option
@one_line_errors
def asyncapi(output: str, title: str, api_version: str, app_target: str) -> None:
    """Write an AsyncAPI 3.0 document of the topology and the message types.

    Payloads refer to the files in schemas/, relative to the document.
    """
    import json
    import os

    from leveret import asyncapi as asyncapi_module

    schemas_path = os.path.relpath("schemas", os.path.dirname(os.path.abspath(output)))
    doc = asyncapi_module.document(
        load_app(app_target), title=title, version=api_version, schemas_path=schemas_path
    )
    Path(output).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    click.echo(f"wrote {output}")
