"""Simulators of kernel interfaces this machine's kernel lacks, behind the same seams the
real code drives. Each is named as a simulator wherever it is used."""
