"""Veracity's contracts: every document that crosses a boundary, defined once.

Typed, frozen, strict and closed pydantic models for every ledger payload
(:mod:`~veracity.contracts.events`), a site's training receipt
(:mod:`~veracity.contracts.receipts`), its signed refusals
(:mod:`~veracity.contracts.refusals`) and the records of the Flower messages between the
ServerApp and the ClientApp (:mod:`~veracity.contracts.messages`). Producers build their
documents from these models and checkers validate with the same models, so what one side
sends is, by construction, what the other side accepts. The shared field types come from
:mod:`veracity.core.fields`.

This package imports only :mod:`veracity.core`, :mod:`veracity.crypto.keys` (to check
enrolled public keys) and pydantic: never torch, TenSEAL, Flower or a web framework.
"""
