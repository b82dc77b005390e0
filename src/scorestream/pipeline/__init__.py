"""The processing pipeline shared by the live worker and the offline commands.

Plain Python, no Faust, Kafka client or Prometheus import: records (what flows), routing
(where a contact lives), the event-time merge (in which order), the processor (what the
engine is asked to do, identity across partitions, outputs), state stores, checkpoints
and changelog recovery. The worker (:mod:`scorestream.app`) connects it to Kafka through
Faust; ``scorestream score`` runs it over a file with in-memory stores. Same code, so the
two give the same results on the same input.
"""
