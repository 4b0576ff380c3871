package dev.optsidecar.server.model;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;

/**
 * Upgrading a format-1 snapshot's model state: format 1 printed k, weightSum and lrMax in every
 * group whatever the algorithm (JsonFormat leaving out zeros); they become the scalars the
 * algorithm declares. The full path, from a real format-1 snapshot, is SnapshotFormat1Test.
 */
class ModelCaptureTest {
    private static final ObjectMapper JSON = new ObjectMapper();

    private static JsonNode json(String text) throws Exception {
        return JSON.readTree(text.replace('\'', '"'));
    }

    @Test
    void anAlgorithmWithoutGroupScalarsDropsFormat1sUnusedCounters() throws Exception {
        JsonNode format1 = json("{'groups': [{'group': 'default', 'lr': 0.01, 'lrMax': -1.0}],"
                + " 'clients': [{'clientId': 'c', 'lastResult': {'groups': [{'group': 'default', 'lr': 0.01, 'lrMax': -1.0}]}}]}");
        assertEquals(json("{'groups': [{'group': 'default', 'lr': 0.01, 'scalars': {}}],"
                        + " 'clients': [{'clientId': 'c', 'lastResult': {'groups': [{'group': 'default', 'lr': 0.01, 'scalars': {}}]}}]}"),
                ModelCapture.upgradeState(format1, 1, "Adam"));
    }

    @Test
    void scheduleFreeCountersLeftOutAsZerosBecomeZeroScalars() throws Exception {
        JsonNode format1 = json("{'groups': [{'group': 'g', 'lr': 0.5, 'lrMax': -1.0},"
                + " {'group': 'h', 'lr': 0.5, 'k': '3', 'weightSum': 0.75, 'lrMax': 0.5}]}");
        assertEquals(json("{'groups': [{'group': 'g', 'lr': 0.5, 'scalars': {'k': 0.0, 'weight_sum': 0.0, 'lr_max': -1.0}},"
                        + " {'group': 'h', 'lr': 0.5, 'scalars': {'k': 3.0, 'weight_sum': 0.75, 'lr_max': 0.5}}]}"),
                ModelCapture.upgradeState(format1, 1, "SGDScheduleFree"));
    }

    @Test
    void theCurrentFormatIsLeftAlone() throws Exception {
        JsonNode current = json("{'groups': [{'group': 'g', 'scalars': {'k': 2.0, 'weight_sum': 0.5, 'lr_max': 0.5}}]}");
        assertSame(current, ModelCapture.upgradeState(current, 2, "SGDScheduleFree"));
    }
}
