package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import dev.optsidecar.server.OptError;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.List;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Validation of the wire form, and properties algorithms.md §8 states for each schedule. */
class SchedulesTest {
    private static final String FIELD = "spec.optimizer.schedule";
    private static final double BASE = 0.03;
    /** Room for the rounding of f·(1−m)+m and similar, relative to the base lr: a few ulps of it. */
    private static final double ULPS = 1e-15;

    private static Struct struct(String json) {
        Struct.Builder b = Struct.newBuilder();
        try {
            JsonFormat.parser().merge(json, b);
        } catch (InvalidProtocolBufferException e) {
            throw new IllegalArgumentException(json, e);
        }
        return b.build();
    }

    private static Schedule parse(String type, String json) {
        return Schedules.parse(type, struct(json), FIELD);
    }

    private static void assertNear(double expected, double actual, String what) {
        assertTrue(Math.abs(actual - expected) <= ULPS * BASE,
                what + ": expected " + expected + ", got " + actual);
    }

    // ---- validation ----

    private static Arguments bad(String type, String json, String where, String message) {
        return Arguments.of(type, json.replace('\'', '"'), where, message);
    }

    static Stream<Arguments> badInputs() {
        return Stream.of(
                bad("warmup", "{}",
                        "type", "unknown schedule type \"warmup\""
                                + " (known: constant, linear_warmup, cosine, wsd, wsd_s, keras_radam)"),
                bad("constant", "{'warmup_steps': 3}",
                        "parameters.warmup_steps", "unknown parameter for schedule constant (known: none)"),
                bad("", "{'x': 1}",
                        "parameters.x", "unknown parameter for schedule constant"),
                bad("linear_warmup", "{'warmup_steps': 3, 'total_steps': 9}",
                        "parameters.total_steps", "unknown parameter for schedule linear_warmup (known: warmup_steps)"),
                bad("linear_warmup", "{}",
                        "parameters.warmup_steps", "required for schedule linear_warmup"),
                bad("linear_warmup", "{'warmup_steps': -1}",
                        "parameters.warmup_steps", "must be a whole number >= 0 (got -1.0)"),
                bad("linear_warmup", "{'warmup_steps': 2.5}",
                        "parameters.warmup_steps", "must be a whole number >= 0 (got 2.5)"),
                bad("linear_warmup", "{'warmup_steps': 1e300}",
                        "parameters.warmup_steps", "must be a whole number >= 0"),
                bad("linear_warmup", "{'warmup_steps': '10'}",
                        "parameters.warmup_steps", "must be a number (got \"10\")"),
                bad("linear_warmup", "{'warmup_steps': true}",
                        "parameters.warmup_steps", "must be a number (got true)"),
                bad("linear_warmup", "{'warmup_steps': null}",
                        "parameters.warmup_steps", "must be a number (got null)"),
                bad("cosine", "{'warmup_steps': 5}",
                        "parameters.total_steps", "required for schedule cosine"),
                bad("cosine", "{'warmup_steps': 5, 'total_steps': 5}",
                        "parameters.total_steps", "must be > warmup_steps = 5 (got 5)"),
                bad("cosine", "{'warmup_steps': 0, 'total_steps': 9, 'num_cycles': 0}",
                        "parameters.num_cycles", "must be > 0"),
                bad("cosine", "{'warmup_steps': 0, 'total_steps': 9, 'min_lr_ratio': 1.5}",
                        "parameters.min_lr_ratio", "must be in [0, 1] (got 1.5)"),
                bad("cosine", "{'warmup_steps': 0, 'total_steps': 9, 'min_lr_ratio': -0.1}",
                        "parameters.min_lr_ratio", "must be in [0, 1]"),
                bad("wsd", "{'warmup_steps': 1, 'stable_steps': 2}",
                        "parameters.decay_steps", "required for schedule wsd"),
                bad("wsd", "{'warmup_steps': 1, 'stable_steps': 2, 'decay_steps': 3, 'warmup_type': 'exp'}",
                        "parameters.warmup_type", "must be one of linear, cosine, 1-sqrt (got \"exp\")"),
                bad("wsd", "{'warmup_steps': 1, 'stable_steps': 2, 'decay_steps': 3,"
                                + " 'warmup_type': 'inverse_proportional', 'min_lr_ratio': 0.1}",
                        "parameters.warmup_type", "must be one of"),
                bad("wsd", "{'warmup_steps': 1, 'stable_steps': 2, 'decay_steps': 3, 'decay_type': 3}",
                        "parameters.decay_type",
                        "must be one of linear, cosine, 1-sqrt, inverse_proportional (got 3.0)"),
                bad("wsd", "{'warmup_steps': 1, 'stable_steps': 2, 'decay_steps': 3,"
                                + " 'decay_type': 'inverse_proportional'}",
                        "parameters.min_lr_ratio", "must be > 0 for decay_type inverse_proportional (got 0.0)"),
                bad("wsd_s", "{'warmup_steps': 5, 'decay_steps': 2}",
                        "parameters.checkpoints", "required for schedule wsd_s"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [], 'decay_steps': 2}",
                        "parameters.checkpoints", "must be a non-empty list of whole numbers (got a list)"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': 20, 'decay_steps': 2}",
                        "parameters.checkpoints", "must be a non-empty list of whole numbers (got 20.0)"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [20, 20], 'decay_steps': 2}",
                        "parameters.checkpoints", "checkpoints[1] must be > checkpoints[0] = 20 (got 20)"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [30, 20], 'decay_steps': 2}",
                        "parameters.checkpoints", "checkpoints[1] must be > checkpoints[0] = 30 (got 20)"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [5], 'decay_steps': 0}",
                        "parameters.checkpoints", "checkpoints[0] must be > warmup_steps = 5 (got 5)"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [20, 22], 'decay_steps': 3}",
                        "parameters.checkpoints",
                        "checkpoints[1] must leave decay_steps = 3 steps after checkpoints[0] = 20 (got 22)"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [7], 'decay_steps': 3}",
                        "parameters.checkpoints",
                        "checkpoints[0] must leave decay_steps = 3 steps after warmup_steps = 5 (got 7)"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [20, 40.5], 'decay_steps': 2}",
                        "parameters.checkpoints[1]", "must be a whole number >= 0 (got 40.5)"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [20, 'x'], 'decay_steps': 2}",
                        "parameters.checkpoints[1]", "must be a number (got \"x\")"),
                bad("wsd_s", "{'warmup_steps': 5, 'checkpoints': [20], 'decay_steps': 2, 'warmup_type': 'linear'}",
                        "parameters.warmup_type", "unknown parameter for schedule wsd_s"),
                bad("keras_radam", "{}",
                        "parameters.total_steps", "required for schedule keras_radam"),
                bad("keras_radam", "{'total_steps': 0}",
                        "parameters.total_steps", "must be > 0 (got 0)"),
                bad("keras_radam", "{'total_steps': 40, 'warmup_proportion': 1.5}",
                        "parameters.warmup_proportion", "must be in [0, 1] (got 1.5)"),
                bad("keras_radam", "{'total_steps': 40, 'min_lr': -0.001}",
                        "parameters.min_lr", "must be >= 0 (got -0.001)"),
                bad("keras_radam", "{'total_steps': 40, 'base_lr': 'high'}",
                        "parameters.base_lr", "must be a number (got \"high\")"),
                bad("keras_radam", "{'total_steps': 40, 'base_lr': 0}",
                        "parameters.base_lr", "must be > 0 (got 0.0)"));
    }

    @ParameterizedTest(name = "{0} {1}")
    @MethodSource("badInputs")
    void badInputIsInvalidArgumentNamingTheField(String type, String json, String where, String message) {
        OptError e = assertThrows(OptError.class, () -> parse(type, json));
        assertEquals(OptError.Kind.INVALID_ARGUMENT, e.kind(), e.getMessage());
        assertTrue(e.getMessage().startsWith(FIELD + "." + where + ": "), e.getMessage());
        assertTrue(e.getMessage().contains(message), e.getMessage());
    }

    @Test
    void nonFiniteNumbersAreRejected() {
        for (double bad : new double[] {Double.NaN, Double.POSITIVE_INFINITY}) {
            Struct parameters = struct("{\"warmup_steps\": 2, \"total_steps\": 9}").toBuilder()
                    .putFields("min_lr_ratio", Value.newBuilder().setNumberValue(bad).build()).build();
            OptError e = assertThrows(OptError.class, () -> Schedules.parse("cosine", parameters, FIELD));
            assertEquals(OptError.Kind.INVALID_ARGUMENT, e.kind());
            assertEquals(FIELD + ".parameters.min_lr_ratio: must be finite (got " + bad + ")", e.getMessage());
        }
    }

    // ---- describing back ----

    @Test
    void anEmptyOrConstantTypeIsConstant() {
        for (Schedule s : List.of(Schedules.parse("", Struct.getDefaultInstance(), FIELD),
                Schedules.parse(null, null, FIELD), parse("constant", "{}"))) {
            assertInstanceOf(Constant.class, s);
            assertEquals("constant", s.type());
            assertEquals(Struct.getDefaultInstance(), s.parameters());
            for (long step = 0; step < 50; step++) {
                assertEquals(BASE, s.lr(BASE, step));
            }
        }
    }

    @Test
    void parametersIncludeDefaultsAndParseBackToTheSameSchedule() {
        List<Schedule> schedules = List.of(
                parse("constant", "{}"),
                parse("linear_warmup", "{\"warmup_steps\": 10}"),
                parse("cosine", "{\"warmup_steps\": 5, \"total_steps\": 40}"),
                parse("wsd", "{\"warmup_steps\": 6, \"stable_steps\": 14, \"decay_steps\": 16}"),
                parse("wsd_s", "{\"warmup_steps\": 5, \"checkpoints\": [20, 40, 60], \"decay_steps\": 6}"),
                parse("keras_radam", "{\"total_steps\": 40, \"base_lr\": 0.02}"));
        assertEquals(Schedules.types(), schedules.stream().map(Schedule::type).toList());
        for (Schedule s : schedules) {
            assertEquals(s, Schedules.parse(s.type(), s.parameters(), FIELD), s.type());
        }
        assertEquals(struct("{\"warmup_steps\": 5, \"total_steps\": 40, \"num_cycles\": 0.5, \"min_lr_ratio\": 0}"),
                schedules.get(2).parameters());
        assertEquals(struct("{\"warmup_steps\": 6, \"stable_steps\": 14, \"decay_steps\": 16,"
                + " \"warmup_type\": \"linear\", \"decay_type\": \"cosine\", \"min_lr_ratio\": 0}"),
                schedules.get(3).parameters());
        assertEquals(struct("{\"total_steps\": 40, \"warmup_proportion\": 0.1, \"min_lr\": 0}"),
                schedules.get(5).parameters());
    }

    @Test
    void aNegativeStepIsACallerBug() {
        for (String type : Schedules.types()) {
            Schedule s = sample(type);
            assertThrows(IllegalArgumentException.class, () -> s.lr(BASE, -1), type);
        }
    }

    private static Schedule sample(String type) {
        return switch (type) {
            case "linear_warmup" -> parse(type, "{\"warmup_steps\": 3}");
            case "cosine" -> parse(type, "{\"warmup_steps\": 3, \"total_steps\": 9}");
            case "wsd" -> parse(type, "{\"warmup_steps\": 3, \"stable_steps\": 3, \"decay_steps\": 3}");
            case "wsd_s" -> parse(type, "{\"warmup_steps\": 3, \"checkpoints\": [9], \"decay_steps\": 3}");
            case "keras_radam" -> parse(type, "{\"total_steps\": 9}");
            default -> parse(type, "{}");
        };
    }

    // ---- properties from algorithms.md §8 ----

    @Test
    void linearWarmupStartsAtZeroAndRisesToTheBaseLr() {
        for (long w : new long[] {0, 1, 3, 10}) {
            Schedule s = new LinearWarmup(w);
            if (w > 0) {
                assertEquals(0.0, s.lr(BASE, 0), "the first step has lr 0");
            }
            for (long step = 1; step < w; step++) {
                assertTrue(s.lr(BASE, step) > s.lr(BASE, step - 1), "rising at s=" + step);
                assertTrue(s.lr(BASE, step) < BASE);
            }
            for (long step = w; step < w + 20; step++) {
                assertEquals(BASE, s.lr(BASE, step), "after warmup, s=" + step);
            }
        }
    }

    @Test
    void cosineFallsMonotonicallyFromTheBaseLrToTheFloorAtTotalSteps() {
        for (double m : new double[] {0, 0.1, 1}) {
            long w = 5;
            long total = 40;
            Schedule s = new CosineWithWarmup(w, total, 0.5, m);
            assertEquals(0.0, s.lr(BASE, 0), "the warmup starts at 0");
            assertNear(BASE, s.lr(BASE, w), "peak right after warmup");
            for (long step = w + 1; step <= total; step++) {
                assertTrue(s.lr(BASE, step) <= s.lr(BASE, step - 1), "non-increasing at s=" + step);
                assertTrue(s.lr(BASE, step) >= m * BASE - ULPS * BASE, "above the floor at s=" + step);
            }
            assertNear(m * BASE, s.lr(BASE, total), "the floor at s=T");
        }
    }

    @Test
    void wsdHoldsTheBaseLrWhileStableAndTheFloorAfterTheDecay() {
        long w = 6;
        long stable = 14;
        long decay = 16;
        for (WarmupShape up : WarmupShape.values()) {
            for (DecayShape down : DecayShape.values()) {
                for (double m : new double[] {0, 0.05, 0.5}) {
                    if (down == DecayShape.INVERSE_PROPORTIONAL && m == 0) {
                        continue;
                    }
                    Schedule s = new Wsd(w, stable, decay, up, down, m);
                    String what = up.id() + "/" + down.id() + "/m=" + m;
                    assertEquals(BASE * m, s.lr(BASE, 0), what + ": warmup starts at the floor");
                    for (long step = 1; step < w; step++) {
                        assertTrue(s.lr(BASE, step) >= s.lr(BASE, step - 1), what + ": warmup rises at s=" + step);
                    }
                    for (long step = w; step < w + stable; step++) {
                        assertEquals(BASE, s.lr(BASE, step), what + ": stable at s=" + step);
                    }
                    assertNear(BASE, s.lr(BASE, w + stable), what + ": the decay starts at the peak");
                    for (long step = w + stable + 1; step < w + stable + decay; step++) {
                        double lr = s.lr(BASE, step);
                        assertTrue(lr <= s.lr(BASE, step - 1), what + ": decay falls at s=" + step);
                        assertTrue(lr > BASE * m || m == 1, what + ": above the floor inside the window at s=" + step);
                    }
                    for (long step = w + stable + decay; step < w + stable + decay + 20; step++) {
                        assertEquals(BASE * m, s.lr(BASE, step), what + ": the floor at s=" + step);
                    }
                }
            }
        }
    }

    @Test
    void wsdSJumpsBackToTheBaseLrRightAfterEachCheckpoint() {
        long w = 5;
        long decay = 6;
        List<Long> checkpoints = List.of(20L, 40L, 60L);
        for (DecayShape down : DecayShape.values()) {
            double m = down == DecayShape.INVERSE_PROPORTIONAL ? 0.1 : 0;
            Schedule s = new WsdS(w, checkpoints, decay, down, m);
            String what = down.id();
            assertEquals(BASE * m, s.lr(BASE, 0), what + ": warmup starts at the floor");
            long previous = w;
            for (long c : checkpoints) {
                for (long step = previous; step < c - decay; step++) {
                    assertEquals(BASE, s.lr(BASE, step), what + ": stable at s=" + step);
                }
                assertNear(BASE, s.lr(BASE, c - decay), what + ": the decay starts at the peak");
                for (long step = c - decay + 1; step < c; step++) {
                    assertTrue(s.lr(BASE, step) < s.lr(BASE, step - 1), what + ": decaying at s=" + step);
                }
                previous = c;
                if (c != checkpoints.get(checkpoints.size() - 1)) {
                    assertEquals(BASE, s.lr(BASE, c), what + ": back at the peak right after checkpoint " + c);
                }
            }
            for (long step = previous; step < previous + 20; step++) {
                assertEquals(BASE * m, s.lr(BASE, step), what + ": the floor after the last checkpoint, s=" + step);
            }
        }
    }

    @Test
    void inverseProportionalDecayRunsFromTheBaseLrOntoTheFloorWithoutAJump() {
        for (double m : new double[] {0.01, 0.2, 0.9}) {
            long decay = 50;
            Schedule s = new Wsd(0, 0, decay, WarmupShape.LINEAR, DecayShape.INVERSE_PROPORTIONAL, m);
            assertEquals(BASE, s.lr(BASE, 0), "m=" + m + ": starts at the peak");
            for (long step = 1; step < decay; step++) {
                assertTrue(s.lr(BASE, step) < s.lr(BASE, step - 1), "m=" + m + ": falls at s=" + step);
                assertTrue(s.lr(BASE, step) > BASE * m, "m=" + m + ": above the floor at s=" + step);
            }
            assertEquals(BASE * m, s.lr(BASE, decay), "m=" + m + ": the floor after the window");
            // The shape is convex and ends at m itself, so the step onto the floor is the smallest one.
            double firstDrop = s.lr(BASE, 0) - s.lr(BASE, 1);
            double lastDrop = s.lr(BASE, decay - 1) - s.lr(BASE, decay);
            assertTrue(lastDrop < firstDrop, "m=" + m + ": " + lastDrop + " onto the floor vs " + firstDrop);
        }
    }

    @Test
    void kerasRadamReachesMinLrAtTotalStepsAndStays() {
        double minLr = BASE / 100;
        for (double proportion : new double[] {0, 0.1, 0.25, 0.5}) {
            long total = 40;
            Schedule s = new KerasRadam(total, proportion, minLr);
            double warmup = total * proportion;
            String what = "warmup_proportion=" + proportion;
            for (long t = 1; t <= total; t++) {
                double lr = s.lr(BASE, t - 1);
                if (t < warmup) {
                    assertTrue(lr < BASE && (t == 1 || lr > s.lr(BASE, t - 2)), what + ": warming up at t=" + t);
                } else if (t == warmup) {
                    assertNear(BASE, lr, what + ": the peak at the end of warmup");
                } else {
                    assertTrue(t == 1 || lr < s.lr(BASE, t - 2), what + ": decaying at t=" + t);
                }
            }
            double atTotal = s.lr(BASE, total - 1);
            assertNear(minLr, atTotal, what + ": min_lr at t=T");
            for (long t = total + 1; t < total + 20; t++) {
                assertEquals(atTotal, s.lr(BASE, t - 1), what + ": stays at min_lr, t=" + t);
            }
        }
    }
}
