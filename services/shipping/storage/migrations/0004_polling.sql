-- when tracking was last asked for by polling (shipments without recent updates)
ALTER TABLE shipments ADD COLUMN last_polled_at timestamptz;
