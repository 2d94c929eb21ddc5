-- Who picked each line and who packed each packing, from the staff member's key
-- (docs/tenancy.md): [{staff_id, name}, ...] and {staff_id, name}. Empty and NULL: a role
-- token or the automatic picker.
ALTER TABLE picklist_lines ADD COLUMN picked_by jsonb NOT NULL DEFAULT '[]';
ALTER TABLE packings ADD COLUMN packed_by jsonb;
