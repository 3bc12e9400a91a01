"""ISO 20022 pain.001 schemas (package data: a package so that wheels ship the .xsd files)."""
