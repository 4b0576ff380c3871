package dev.optsidecar.server.conformance;

import com.fasterxml.jackson.databind.JsonNode;

import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/**
 * Element-wise check {@code |a − ref| ≤ atol + rtol·|ref|} and relative checks of double scalars,
 * keeping the worst error seen as a fraction of its tolerance and where it occurred.
 */
final class Comparison {
    private final double atol;
    private final double rtol;
    private final double scalarRtol;
    private double worst;
    private String worstWhere = "no values compared";
    private String firstFailure;

    Comparison(double atol, double rtol, double scalarRtol) {
        this.atol = atol;
        this.rtol = rtol;
        this.scalarRtol = scalarRtol;
    }

    void tensors(String what, List<String> names, List<float[]> actual, List<float[]> expected) {
        for (int t = 0; t < expected.size(); t++) {
            float[] a = actual.get(t);
            float[] e = expected.get(t);
            if (a.length != e.length) {
                fail(String.format("%s %s: %d values, expected %d", what, names.get(t), a.length, e.length));
                continue;
            }
            for (int i = 0; i < e.length; i++) {
                double limit = atol + rtol * Math.abs(e[i]);
                double err = Math.abs((double) a[i] - e[i]);
                double fraction = Double.isNaN(err) ? Double.POSITIVE_INFINITY : err / limit;
                record(fraction, String.format("%s %s[%d]: got %s, expected %s", what, names.get(t), i, a[i], e[i]));
            }
        }
    }

    void scalar(String what, double actual, double expected) {
        double limit = scalarRtol * Math.max(Math.abs(expected), Double.MIN_NORMAL);
        double err = Math.abs(actual - expected);
        double fraction = err == 0 ? 0 : Double.isNaN(err) ? Double.POSITIVE_INFINITY : err / limit;
        record(fraction, String.format("%s: got %s, expected %s", what, actual, expected));
    }

    /**
     * The group scalars the reference records (of {@code recorded}, those {@code expected} holds)
     * against the server's, by name; one the server's group lacks is a failure.
     */
    void groupScalars(String what, Map<String, Double> actual, JsonNode expected, List<String> recorded) {
        for (String name : recorded) {
            if (!expected.has(name)) {
                continue;
            }
            Double value = actual.get(name);
            if (value == null) {
                fail(String.format("%s %s: the reference records this group scalar; the server's group has %s",
                        what, name, actual.isEmpty() ? "none" : String.join(", ", new TreeSet<>(actual.keySet()))));
            } else {
                scalar(what + " " + name, value, expected.path(name).asDouble());
            }
        }
    }

    void exact(String what, long actual, long expected) {
        if (actual != expected) {
            fail(String.format("%s: got %d, expected %d", what, actual, expected));
        }
    }

    private void record(double fraction, String where) {
        if (fraction > worst || worst == 0 && worstWhere.equals("no values compared")) {
            worst = fraction;
            worstWhere = where;
        }
        if (fraction > 1 && firstFailure == null) {
            firstFailure = where;
        }
    }

    void fail(String message) {
        if (firstFailure == null) {
            firstFailure = message;
        }
        worst = Math.max(worst, Double.POSITIVE_INFINITY);
    }

    boolean passed() {
        return firstFailure == null;
    }

    double worst() {
        return worst;
    }

    String worstWhere() {
        return worstWhere;
    }

    String firstFailure() {
        return firstFailure;
    }
}
