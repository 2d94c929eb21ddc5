-- An order's status changes several times on its way (accepted, packed, shipped, ...).
-- With an index on status every change wrote a new entry into every index of the table;
-- without it, and with room left on each page, a status change is a heap-only (HOT)
-- update. The one reader of status as a set, the ops summary's count by status, reads
-- the whole table either way.
DROP INDEX orders_status;
ALTER TABLE orders SET (fillfactor = 85);
