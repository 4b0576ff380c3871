package dev.optsidecar.server;

import dev.optsidecar.server.model.Limits;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

import java.time.Duration;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The limit flags: their defaults are the documented ones, and each reaches the server's Limits. */
class MainLimitsTest {
    private static Limits parse(String... args) {
        Main main = new Main();
        new CommandLine(main).parseArgs(args);
        return main.limits();
    }

    @Test
    void defaultsAreTheDocumentedOnes() {
        assertEquals(Limits.DEFAULTS, parse());
    }

    @Test
    void eachFlagSetsItsLimit() {
        Limits l = parse("--max-client-id-bytes", "16", "--max-tensors-per-model", "7", "--max-trainers-per-model", "3",
                "--max-pending-registrations", "2", "--max-ledger-entries", "5", "--history-versions", "9",
                "--history-bytes", "1m", "--idle-stream-timeout", "0");
        assertEquals(new Limits(16, 7, 3, 2, 5, 9, 1L << 20, Duration.ZERO), l);
    }

    @Test
    void badValuesAreRefused() {
        assertThrows(CommandLine.ParameterException.class, () -> parse("--max-ledger-entries", "0"));
        assertThrows(CommandLine.ParameterException.class, () -> parse("--idle-stream-timeout", "-1"));
    }

    @Test
    void helpListsTheLimitFlags() {
        String usage = new CommandLine(new Main()).getUsageMessage();
        for (String flag : List.of("--max-client-id-bytes", "--max-tensors-per-model", "--max-trainers-per-model",
                "--max-pending-registrations", "--max-ledger-entries", "--history-versions", "--history-bytes",
                "--idle-stream-timeout")) {
            assertTrue(usage.contains(flag), "--help lacks " + flag + ":\n" + usage);
        }
    }
}
