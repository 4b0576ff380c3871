package dev.optsidecar.server.observe;

import java.util.Locale;
import java.util.logging.Logger;

/**
 * Progress of a long operation (verifying or loading a large snapshot, a conformance run), logged
 * as event {@code progress} every few seconds with {@code operation}, {@code done}, {@code total}
 * and {@code unit}; a quick operation logs nothing. Once a line was logged, the end is logged too.
 * The period is {@value #DEFAULT_INTERVAL_MS} ms, or the system property {@value #INTERVAL_PROPERTY}.
 */
public final class Progress {
    /** Milliseconds between progress lines (0: a line for every advance, as tests use it). */
    public static final String INTERVAL_PROPERTY = "optsidecar.progress.interval.ms";
    static final long DEFAULT_INTERVAL_MS = 5000;

    private final Logger log;
    private final String operation;
    private final String model;
    private final String what;
    private final String unit;
    private final long total;
    private final long intervalNanos;
    private long done;
    private long lastLine = System.nanoTime();
    private boolean logged;

    private Progress(Logger log, String operation, String model, String what, String unit, long total) {
        this.log = log;
        this.operation = operation;
        this.model = model;
        this.what = what;
        this.unit = unit;
        this.total = total;
        this.intervalNanos = Long.getLong(INTERVAL_PROPERTY, DEFAULT_INTERVAL_MS) * 1_000_000L;
    }

    /**
     * Starts counting {@code total} {@code unit}s ("bytes", "cases") of {@code what} (the line's
     * subject, e.g. "verifying snapshot 000012 of model 'm'"), for {@code model} (null: none).
     */
    public static Progress start(Logger log, String operation, String model, String what, String unit, long total) {
        return new Progress(log, operation, model, what, unit, total);
    }

    /** {@code n} more units are done; logs a line when the period has passed since the last. */
    public synchronized void advance(long n) {
        done += n;
        long now = System.nanoTime();
        if (now - lastLine >= intervalNanos) {
            lastLine = now;
            line();
        }
    }

    /** The operation ended: logs its last line if it logged any (a quick one stays silent). */
    public synchronized void finish() {
        if (logged && intervalNanos > 0) {
            line();
        }
    }

    private void line() {
        logged = true;
        long doneNow = done;
        String percent = total > 0 ? String.format(Locale.ROOT, " (%.0f%%)", 100.0 * doneNow / total) : "";
        LogEvent.info(log, "progress", model, () -> String.format(Locale.ROOT, "%s: %d of %d %s%s", what, doneNow,
                total, unit, percent), "operation", operation, "done", doneNow, "total", total, "unit", unit);
    }
}
