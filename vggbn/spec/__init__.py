"""The sweep file's data model and every cross-field rule: pure validation, no I/O, no Ray."""
