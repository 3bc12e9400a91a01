"""Typed errors of :mod:`paykeep.aml.graph`. Codes are stable forever and never reused.

Bad input files are :class:`~paykeep.errors.InvalidInput` (the CLI exits 2 with a one-line
reason); a missing model is :class:`~paykeep.errors.NotFound` (exit 2 as well).
"""

from __future__ import annotations

from paykeep.errors import InvalidInput, NotFound


class AmlInputError(InvalidInput):
    """Family of every bad-input-file error of the graph package (abstract: no own code)."""


class UnknownInputFormat(AmlInputError):
    code = "aml_input_unknown_format"


class InputFileNotFound(AmlInputError):
    code = "aml_input_file_not_found"


class EmptyInput(AmlInputError):
    code = "aml_input_empty"


class MissingColumns(AmlInputError):
    code = "aml_input_missing_columns"


class BadTimestamp(AmlInputError):
    code = "aml_input_bad_timestamp"


class BadAmount(AmlInputError):
    code = "aml_input_bad_amount"


class NegativeAmount(AmlInputError):
    code = "aml_input_negative_amount"


class UnknownAmlCurrency(AmlInputError):
    code = "aml_input_unknown_currency"


class BadAccount(AmlInputError):
    code = "aml_input_bad_account"


class BadLabel(AmlInputError):
    code = "aml_input_bad_label"


class BadPatternsFile(AmlInputError):
    code = "aml_input_bad_patterns"


class InsufficientLabels(InvalidInput):
    """Evaluation or training needs positives and negatives in every split."""

    code = "graph_insufficient_labels"


class InvalidGraphParameter(InvalidInput):
    code = "graph_invalid_parameter"


class ModelNotFound(NotFound):
    code = "graph_model_not_found"


class BadModelFile(InvalidInput):
    code = "graph_bad_model_file"
