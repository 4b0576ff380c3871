package dev.optsidecar.server.conformance;

import dev.optsidecar.server.SidecarFixture;
import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Replays the shared reference vectors through a real server, in-process. */
class ReferenceConformanceTest {
    static Path referenceDir() {
        String configured = System.getProperty("optsidecar.reference.dir");
        Path dir = configured != null ? Path.of(configured) : Path.of("..", "..", "shared", "reference");
        assertTrue(Files.isDirectory(dir), "reference vectors not found at " + dir.toAbsolutePath()
                + " (set -Doptsidecar.reference.dir)");
        return dir;
    }

    @Test
    void everyReferenceCasePasses() throws Exception {
        ByteArrayOutputStream printed = new ByteArrayOutputStream();
        ConformanceRunner.Summary summary;
        try (SidecarFixture server = SidecarFixture.inProcess(2, 1L << 30).start();
             PrintStream out = new PrintStream(printed, true, StandardCharsets.UTF_8)) {
            summary = new ConformanceRunner(server.client(), out).runAll(referenceDir());
        }
        String report = printed.toString(StandardCharsets.UTF_8);
        System.out.print(report);
        // Every algorithm, schedule, wrapper and resume case of the shared vectors is implemented.
        assertEquals(List.of(), summary.names("FAIL"), report);
        assertEquals(List.of(), summary.names("SKIP"), report);
        assertTrue(summary.passed() >= 30, report);
        String last = report.strip().lines().reduce((a, b) -> b).orElse("");
        assertEquals("conformance: " + summary.passed() + " passed, 0 failed", last);
    }

    @Test
    void aCaseOutsideToleranceFails(@org.junit.jupiter.api.io.TempDir Path tmp) throws Exception {
        // Shift one recorded value of a real case by 10x its tolerance: the runner must report FAIL.
        Path original = referenceDir().resolve("adam.json");
        com.fasterxml.jackson.databind.ObjectMapper json = new com.fasterxml.jackson.databind.ObjectMapper();
        com.fasterxml.jackson.databind.node.ObjectNode root =
                (com.fasterxml.jackson.databind.node.ObjectNode) json.readTree(original.toFile());
        com.fasterxml.jackson.databind.node.ObjectNode step =
                (com.fasterxml.jackson.databind.node.ObjectNode) root.path("steps").get(3);
        com.fasterxml.jackson.databind.node.ArrayNode train =
                (com.fasterxml.jackson.databind.node.ArrayNode) step.path("train");
        float[] p0 = ReferenceCase.decode(train.get(0).asText());
        p0[1] += (float) (10 * (root.path("tolerance").path("atol").asDouble()
                + root.path("tolerance").path("rtol").asDouble() * Math.abs(p0[1])));
        java.nio.ByteBuffer bytes = java.nio.ByteBuffer.allocate(p0.length * 4).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        bytes.asFloatBuffer().put(p0);
        train.set(0, java.util.Base64.getEncoder().encodeToString(bytes.array()));
        json.writeValue(tmp.resolve("adam_tampered.json").toFile(), root);

        ByteArrayOutputStream printed = new ByteArrayOutputStream();
        try (SidecarFixture server = SidecarFixture.inProcess(1, 1L << 28).start();
             PrintStream out = new PrintStream(printed, true, StandardCharsets.UTF_8)) {
            ConformanceRunner.Summary summary = new ConformanceRunner(server.client(), out).runAll(tmp);
            assertEquals(List.of("adam"), summary.names("FAIL"), printed.toString(StandardCharsets.UTF_8));
        }
        assertTrue(printed.toString(StandardCharsets.UTF_8).contains("step 4 train p0[1]"),
                printed.toString(StandardCharsets.UTF_8));
    }

    @Test
    void groupScalarsAreComparedByName(@org.junit.jupiter.api.io.TempDir Path tmp) throws Exception {
        // Two copies of a Schedule-Free case: one records a group scalar the server's group does not
        // declare, the other a weight_sum off by far more than the scalar tolerance.
        com.fasterxml.jackson.databind.ObjectMapper json = new com.fasterxml.jackson.databind.ObjectMapper();
        Path original = referenceDir().resolve("sgd_schedulefree.json");
        com.fasterxml.jackson.databind.node.ObjectNode unknown =
                (com.fasterxml.jackson.databind.node.ObjectNode) json.readTree(original.toFile());
        unknown.put("case", "unknown_scalar");
        ((com.fasterxml.jackson.databind.node.ObjectNode) unknown.path("steps").get(0).path("group")).put("momentum_sum", 1.0);
        json.writeValue(tmp.resolve("unknown_scalar.json").toFile(), unknown);
        com.fasterxml.jackson.databind.node.ObjectNode shifted =
                (com.fasterxml.jackson.databind.node.ObjectNode) json.readTree(original.toFile());
        shifted.put("case", "shifted_scalar");
        com.fasterxml.jackson.databind.node.ObjectNode group =
                (com.fasterxml.jackson.databind.node.ObjectNode) shifted.path("steps").get(2).path("group");
        group.put("weight_sum", group.path("weight_sum").asDouble() * (1 + 1e-9));
        json.writeValue(tmp.resolve("shifted_scalar.json").toFile(), shifted);

        ByteArrayOutputStream printed = new ByteArrayOutputStream();
        try (SidecarFixture server = SidecarFixture.inProcess(1, 1L << 28).start();
             PrintStream out = new PrintStream(printed, true, StandardCharsets.UTF_8)) {
            ConformanceRunner.Summary summary = new ConformanceRunner(server.client(), out).runAll(tmp);
            assertEquals(List.of("shifted_scalar", "unknown_scalar"), summary.names("FAIL").stream().sorted().toList(),
                    printed.toString(StandardCharsets.UTF_8));
        }
        String report = printed.toString(StandardCharsets.UTF_8);
        assertTrue(report.contains("step 1 momentum_sum: the reference records this group scalar; the server's group"
                + " has k, lr_max, weight_sum"), report);
        assertTrue(report.contains("step 3 weight_sum"), report);
    }
}
