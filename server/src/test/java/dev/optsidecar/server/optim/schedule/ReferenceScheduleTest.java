package dev.optsidecar.server.optim.schedule;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import com.google.protobuf.Struct;
import com.google.protobuf.util.JsonFormat;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Every shared reference case's recorded lr, step by step, against the schedule parsed from the case. */
class ReferenceScheduleTest {
    private static final Set<String> ALL_TYPES =
            Set.of("constant", "linear_warmup", "cosine", "wsd", "wsd_s", "keras_radam");

    private static Path referenceDir() {
        String configured = System.getProperty("optsidecar.reference.dir");
        Path dir = configured != null ? Path.of(configured) : Path.of("..", "..", "shared", "reference");
        assertTrue(Files.isDirectory(dir), "reference vectors not found at " + dir.toAbsolutePath()
                + " (set -Doptsidecar.reference.dir)");
        return dir;
    }

    private static List<Path> caseFiles() throws Exception {
        try (Stream<Path> files = Files.list(referenceDir())) {
            return files.filter(f -> f.toString().endsWith(".json"))
                    .filter(f -> !f.getFileName().toString().equals("index.json"))
                    .sorted().toList();
        }
    }

    /** The group's base lr: the optimizer's, or for Lookahead the wrapped optimizer's. */
    private static double baseLr(JsonNode root) {
        JsonNode lr = root.path("hyperparameters").path("lr");
        if (lr.isMissingNode()) {
            lr = root.path("inner").path("hyperparameters").path("lr");
        }
        assertTrue(lr.isNumber(), "no base lr in " + root.path("case").asText());
        return lr.doubleValue();
    }

    private static Schedule schedule(JsonNode root, String field) throws Exception {
        ObjectNode json = root.path("schedule").deepCopy();
        String type = json.remove("type").asText();
        Struct.Builder parameters = Struct.newBuilder();
        JsonFormat.parser().merge(json.toString(), parameters);
        return Schedules.parse(type, parameters.build(), field);
    }

    @Test
    void everyCaseRecordsTheScheduledLr() throws Exception {
        ObjectMapper mapper = new ObjectMapper();
        List<String> failures = new ArrayList<>();
        Set<String> exercised = new TreeSet<>();
        int checked = 0;
        for (Path file : caseFiles()) {
            JsonNode root = mapper.readTree(file.toFile());
            String name = root.path("case").asText(file.getFileName().toString());
            Schedule schedule = schedule(root, name + ".schedule");
            double base = baseLr(root);
            double rtol = root.path("tolerance").path("scalar_rtol").asDouble(Double.NaN);
            assertTrue(rtol >= 0, name + ": no tolerance.scalar_rtol");
            JsonNode steps = root.path("steps");
            assertTrue(steps.size() > 0, name + ": no steps");
            for (int i = 0; i < steps.size(); i++) {
                long t = steps.get(i).path("t").asLong();
                assertEquals(i + 1, t, name + ": steps are not numbered 1, 2, ...");
                double expected = steps.get(i).path("lr").asDouble();
                double actual = schedule.lr(base, t - 1);
                if (!(Math.abs(actual - expected) <= rtol * Math.abs(expected))) {
                    failures.add(String.format("%s step %d: lr %s, expected %s", name, t, actual, expected));
                }
                checked++;
            }
            exercised.add(schedule.type());
        }
        assertEquals(List.of(), failures, failures.size() + " of " + checked + " steps off");
        assertEquals(new TreeSet<>(ALL_TYPES), exercised, "schedule types exercised by the reference cases");
    }
}
