"""Real-time AML decisions: allow / review / block before money moves.

Public surface: :class:`~paykeep.aml.rules.service.DecisionEngine` (``decide``/``check``),
:class:`~paykeep.aml.rules.service.RulesService` (configuration versions), and the event and
decision types of :mod:`paykeep.aml.rules.model`.
"""
