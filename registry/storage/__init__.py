"""Storage: the metadata database (schema, reads, writes, migrations runner), the blob store, atomic files, staging and recovery, gc and verify."""
