"""The raw changelog (docs/architecture.md §6): immutable zstd Parquet files in a local folder or GCS."""

from connectors.changelog.writer import ChangelogWriter, PublishedFile, write_events

__all__ = ["ChangelogWriter", "PublishedFile", "write_events"]
