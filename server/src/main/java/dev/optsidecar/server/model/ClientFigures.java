package dev.optsidecar.server.model;

import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.Map;
import java.util.regex.Pattern;

/** The rules for the named scalars a trainer reports (StepCommit.figures, LogFigures): few, short names, finite values. */
public final class ClientFigures {
    /** Most names in one step's (or one LogFigures') figures. */
    public static final int MAX_PER_STEP = 64;
    /** Longest name, in characters. */
    public static final int MAX_NAME_LENGTH = 64;
    private static final Pattern NAME = Pattern.compile("[A-Za-z0-9_.:/-]{1," + MAX_NAME_LENGTH + "}");

    private ClientFigures() {
    }

    /** Returns {@code figures} when they keep the rules; otherwise INVALID_ARGUMENT naming {@code field}. */
    public static Map<String, Double> check(Map<String, Double> figures, String field) {
        if (figures.size() > MAX_PER_STEP) {
            throw OptError.invalid("%s: %d figures; at most %d per step", field, figures.size(), MAX_PER_STEP);
        }
        for (Map.Entry<String, Double> e : figures.entrySet()) {
            if (!NAME.matcher(e.getKey()).matches()) {
                throw OptError.invalid("%s: figure name '%s' is not 1 to %d characters of A-Z a-z 0-9 _ . : / -",
                        field, Echo.of(e.getKey()), MAX_NAME_LENGTH);
            }
            if (!Double.isFinite(e.getValue())) {
                throw OptError.invalid("%s: figure '%s' is %s; figures must be finite", field, e.getKey(),
                        e.getValue());
            }
        }
        return figures;
    }
}
