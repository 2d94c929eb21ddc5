-- the trace context of the packing event, so that buying the label later (in a worker)
-- continues the order's trace: {"traceparent": "...", "tracestate": "..."}
ALTER TABLE shipments ADD COLUMN trace_context jsonb;
