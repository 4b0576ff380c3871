package dev.optsidecar.server.optim;

import dev.optsidecar.server.TrainingConfigs;

import org.junit.jupiter.api.Test;

import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.assertTrue;

/** An algorithm added to the registry must also be added to the snapshot/resume configurations. */
class RegistryCoverageTest {
    @Test
    void everyRegisteredAlgorithmIsInTheResumeConfigurations() {
        Set<String> configured = TrainingConfigs.all().map(TrainingConfigs.Config::algorithm).collect(Collectors.toSet());
        Set<String> missing = new TreeSet<>(Algorithms.names());
        missing.removeAll(configured);
        assertTrue(missing.isEmpty(), "algorithms missing from TrainingConfigs (snapshot and resume tests): " + missing);
    }
}
