package dev.optsidecar.server.observe;

import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.Supplier;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;

/**
 * A lifecycle event logged with structured fields beside its message: the event's name, the model
 * and whatever else it carries. A text log shows the message; a JSON log ({@code --log-format json})
 * adds the fields to the line's object.
 */
public final class LogEvent {
    /** The fields, carried to the formatter as the record's only parameter. */
    public record Fields(Map<String, Object> values) {
    }

    private LogEvent() {
    }

    /** Logs {@code message} at INFO as event {@code event} of {@code model} (null: the server's), with more fields. */
    public static void info(Logger logger, String event, String model, Supplier<String> message, Object... more) {
        log(logger, Level.INFO, event, model, message, more);
    }

    /**
     * Logs at {@code level}, when the logger takes it; {@code more} alternates names and values
     * ({@code "version", 12, "bytes", 4096}).
     */
    public static void log(Logger logger, Level level, String event, String model, Supplier<String> message,
                           Object... more) {
        if (!logger.isLoggable(level)) {
            return;
        }
        Map<String, Object> fields = new LinkedHashMap<>();
        fields.put("event", event);
        if (model != null) {
            fields.put("model", model);
        }
        for (int i = 0; i + 1 < more.length; i += 2) {
            fields.put(String.valueOf(more[i]), more[i + 1]);
        }
        LogRecord record = new LogRecord(level, message.get());
        record.setLoggerName(logger.getName());
        // The caller, not this class, is where the event happened (what a text log names).
        StackWalker.getInstance().walk(frames -> frames
                .filter(f -> !f.getClassName().equals(LogEvent.class.getName())).findFirst())
                .ifPresent(f -> {
                    record.setSourceClassName(f.getClassName());
                    record.setSourceMethodName(f.getMethodName());
                });
        record.setParameters(new Object[] {new Fields(Collections.unmodifiableMap(fields))});
        logger.log(record);
    }
}
