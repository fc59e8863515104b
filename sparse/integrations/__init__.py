"""Integrations with other training frameworks. Each lives in its own module and imports its
framework there only, so ``import sparse`` never needs them (transformers is an optional extra)."""
