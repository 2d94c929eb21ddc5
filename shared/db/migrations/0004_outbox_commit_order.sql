-- Outbox rows are now written under the service's outbox lock, held until commit, so their
-- id order is their commit order (shared/db/uow.py). The relay no longer compares writers'
-- transaction ids with the oldest running transaction of the whole cluster, which held every
-- service's relay back behind any open transaction.
ALTER TABLE outbox DROP COLUMN txid;
