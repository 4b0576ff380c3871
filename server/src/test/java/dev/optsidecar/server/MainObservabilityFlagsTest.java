package dev.optsidecar.server;

import org.junit.jupiter.api.Test;
import picocli.CommandLine;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Mistakes in --http-port, --http-bind and --log-format: exit code 2 and one line naming the flag. */
class MainObservabilityFlagsTest {
    private static String mistake(Map<String, String> environment, String... args) {
        StringWriter err = new StringWriter();
        CommandLine cmd = Main.commandLine(environment).setErr(new PrintWriter(err));
        assertEquals(Main.EXIT_USAGE, cmd.execute(args), err.toString());
        return err.toString().lines().findFirst().orElse("");
    }

    @Test
    void badValuesAreNamed() {
        assertEquals("optsidecar-server: --http-port must be 0 to 65535 (0: any free port), not 70000",
                mistake(Map.of(), "--http-port", "70000"));
        assertEquals("optsidecar-server: --http-bind needs --http-port", mistake(Map.of(), "--http-bind", "0.0.0.0"));
        assertEquals("optsidecar-server: --http-bind needs --http-port",
                mistake(Map.of("OPTSIDECAR_HTTP_BIND", "0.0.0.0")));
        assertEquals("optsidecar-server: --http-bind 192.0.2.1: not an address of this machine",
                mistake(Map.of(), "--http-port", "0", "--http-bind", "192.0.2.1"));
        assertEquals("optsidecar-server: --log-format: 'xml' is not text or json", mistake(Map.of(), "--log-format", "xml"));
    }

    @Test
    void helpListsTheFlags() {
        String usage = new CommandLine(new Main()).getUsageMessage();
        for (String flag : new String[] {"--http-port", "--http-bind", "--log-format"}) {
            assertTrue(usage.contains(flag), "--help lacks " + flag);
        }
    }
}
