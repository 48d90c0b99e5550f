"""A LangChain agent on the mesh: `ChatOpenAI` pointed at `kanbanmesh up`, unchanged.

It asks for the weather through a tool (`bind_tools`), runs the call the model makes, feeds the
result back as a tool message, prints the model's final answer, then asks for structured output
(`with_structured_output`, a JSON Schema the llama backend enforces with a grammar).

    kanbanmesh up                      # another terminal: server, broker, a llama worker
    python examples/agents/langchain_agent.py --base-url http://127.0.0.1:8765/v1

`--json` prints the run as one JSON object (the tests read it). See README.md beside this file.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is sunny and 22 degrees Celsius in {city}."


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(description="the city's name")
    country: str = Field(description="the country the city is in")


def run(base_url: str, model: str, api_key: str, question: str) -> dict[str, Any]:
    llm = ChatOpenAI(base_url=base_url, api_key=api_key, model=model, temperature=0, max_tokens=160)  # type: ignore[arg-type]
    # A small model rarely chooses a tool on its own: require this one (`tool_choice`), once
    # (`parallel_tool_calls`); the grammar makes its call valid against the tool's schema.
    with_tools = llm.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    messages: list[BaseMessage] = [SystemMessage("You answer questions about the weather."), HumanMessage(question)]
    reply = with_tools.invoke(messages)
    messages.append(reply)
    results = []
    for call in reply.tool_calls:  # type: ignore[attr-defined]
        result = get_weather.invoke(call["args"])
        results.append({"name": call["name"], "args": call["args"], "id": call["id"], "result": result})
        messages.append(ToolMessage(result, tool_call_id=call["id"]))
    final = llm.invoke(messages)  # the tool's result back to the model: its answer
    # The grammar makes the answer JSON valid against City's schema; a question that holds its
    # answer keeps a small model's strings short.
    city = llm.with_structured_output(City, method="json_schema").invoke(
        "Paris is a city in France. Give the city and its country.")
    return {"calls": results, "answer": final.content, "structured": City.model_validate(city).model_dump()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8765/v1")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model the mesh serves")
    parser.add_argument("--api-key", default="unused", help="a client token, with auth on")
    parser.add_argument("--question", default="What is the weather in Paris?")
    parser.add_argument("--json", action="store_true", help="print the run as one JSON object")
    args = parser.parse_args()
    outcome = run(args.base_url, args.model, args.api_key, args.question)
    if args.json:
        print(json.dumps(outcome))
        return
    for call in outcome["calls"]:
        print(f"tool call: {call['name']}({json.dumps(call['args'])}) -> {call['result']}")
    print(f"answer: {outcome['answer']}")
    print(f"structured: {outcome['structured']}")


if __name__ == "__main__":
    main()
